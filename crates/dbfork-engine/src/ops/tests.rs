use super::failure_excerpt;

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}

#[test]
fn the_exception_comes_before_warnings_and_frames() {
    let mut output = lines(
        "System check identified some issues:\nWARNINGS:\nshop.Order: (models.W042) Auto-created primary key\nTraceback (most recent call last):\n  File \"manage.py\", line 22, in <module>\n    main()\nValueError: first\n\nDuring handling of the above exception, another exception occurred:\n\nTraceback (most recent call last):\n  File \"manage.py\", line 9, in main\n    migrate()\ndjango.core.management.base.SystemCheckError: SystemCheckError: System check identified some issues:\n\nERRORS:\nshop.E001: broken",
    );
    for n in 0..50 {
        output.insert(0, format!("noise {n}"));
    }
    let excerpt = failure_excerpt(&output);
    assert!(
        excerpt.starts_with(
            "It raised:\ndjango.core.management.base.SystemCheckError: SystemCheckError"
        ),
        "{excerpt}"
    );
    assert!(excerpt.contains("shop.E001: broken"), "{excerpt}");
    assert!(
        excerpt.contains("File \"manage.py\", line 9, in main"),
        "{excerpt}"
    );
    assert!(!excerpt.contains("noise"), "{excerpt}");
}

#[test]
fn without_a_traceback_the_last_lines() {
    let output: Vec<String> = (0..100).map(|n| format!("line {n}")).collect();
    let excerpt = failure_excerpt(&output);
    assert!(
        excerpt.starts_with("Its last output:\nline 75\n"),
        "{excerpt}"
    );
    assert!(excerpt.ends_with("line 99"), "{excerpt}");
    assert_eq!(failure_excerpt(&[]), "Its output: (none)");
}
