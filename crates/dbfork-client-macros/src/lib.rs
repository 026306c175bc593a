//! `#[dbfork_client::test(inputs = ..., fill = ...)]` (re-exported by
//! `dbfork-client`): a test function that takes a `dbfork_client::Lease`
//! becomes a `#[test]` (an `async fn`: a `#[tokio::test]`) that leases it
//! from the template made from `inputs` by `fill`:
//!
//! ```ignore
//! #[dbfork_client::test(inputs = "migrations", fill = migrate)]
//! fn an_item_is_added(db: dbfork_client::Lease) {
//!     // db.url(): this test's own database
//! }
//! ```
//!
//! expands to
//!
//! ```ignore
//! #[test]
//! fn an_item_is_added() {
//!     fn an_item_is_added(db: dbfork_client::Lease) { /* the body */ }
//!     an_item_is_added(::dbfork_client::test_database("migrations", migrate))
//! }
//! ```
//!
//! Written on `proc_macro` alone (no parser crate): it reads the shape of
//! a function, nothing more.

use proc_macro::{Delimiter, Group, Ident, Punct, Spacing, Span, TokenStream, TokenTree};

#[proc_macro_attribute]
pub fn test(args: TokenStream, item: TokenStream) -> TokenStream {
    match expand(args, item) {
        Ok(out) => out,
        Err((span, message)) => error(span, &message),
    }
}

type Failure = (Span, String);

/// `inputs = EXPR, fill = EXPR`: each value's tokens up to the next
/// top-level comma.
fn arguments(args: TokenStream) -> Result<(TokenStream, TokenStream), Failure> {
    let usage = "write #[dbfork_client::test(inputs = \"migrations\", fill = migrate)]: `inputs` the files the template is made from (a path or an array of them), `fill` what migrates it (fn(&dbfork_client::Database) -> Result<(), E>; for an async test an async one taking a Database)";
    let mut inputs = None;
    let mut fill = None;
    let mut tokens = args.into_iter().peekable();
    while let Some(token) = tokens.next() {
        let TokenTree::Ident(key) = &token else {
            return Err((token.span(), usage.to_string()));
        };
        match tokens.next() {
            Some(TokenTree::Punct(p)) if p.as_char() == '=' => {}
            other => return Err((other.map_or(key.span(), |t| t.span()), usage.to_string())),
        }
        let mut value = TokenStream::new();
        while let Some(t) = tokens.peek() {
            if matches!(t, TokenTree::Punct(p) if p.as_char() == ',') {
                tokens.next();
                break;
            }
            value.extend(tokens.next());
        }
        match key.to_string().as_str() {
            "inputs" => inputs = Some(value),
            "fill" => fill = Some(value),
            _ => return Err((key.span(), format!("unknown argument `{key}`: {usage}"))),
        }
    }
    match (inputs, fill) {
        (Some(inputs), Some(fill)) if !inputs.is_empty() && !fill.is_empty() => Ok((inputs, fill)),
        _ => Err((Span::call_site(), usage.to_string())),
    }
}

fn expand(args: TokenStream, item: TokenStream) -> Result<TokenStream, Failure> {
    let (inputs, fill) = arguments(args)?;
    let tokens: Vec<TokenTree> = item.into_iter().collect();
    // Outer attributes (#[ignore], #[should_panic], docs) go on the test.
    let mut at = 0;
    let mut attributes = TokenStream::new();
    while let (Some(TokenTree::Punct(p)), Some(TokenTree::Group(g))) =
        (tokens.get(at), tokens.get(at + 1))
    {
        if p.as_char() != '#' || g.delimiter() != Delimiter::Bracket {
            break;
        }
        attributes.extend([tokens[at].clone(), tokens[at + 1].clone()]);
        at += 2;
    }
    let function = &tokens[at..];
    let fn_at = function
        .iter()
        .position(|t| matches!(t, TokenTree::Ident(i) if i.to_string() == "fn"))
        .ok_or_else(|| {
            (
                Span::call_site(),
                "#[dbfork_client::test] goes on a function".to_string(),
            )
        })?;
    let is_async = function[..fn_at]
        .iter()
        .any(|t| matches!(t, TokenTree::Ident(i) if i.to_string() == "async"));
    let Some(TokenTree::Ident(name)) = function.get(fn_at + 1) else {
        return Err((Span::call_site(), "a function without a name".to_string()));
    };
    let Some(TokenTree::Group(params)) = function.get(fn_at + 2) else {
        return Err((
            name.span(),
            "generic test functions are not supported".to_string(),
        ));
    };
    if params.stream().is_empty() {
        return Err((
            params.span(),
            "the test takes its database: add a parameter `db: dbfork_client::Lease`".to_string(),
        ));
    }
    // `-> T` between the parameters and the body.
    let body_at = function.len() - 1;
    let returns: TokenStream = function[fn_at + 3..body_at].iter().cloned().collect();

    let database = if is_async {
        format!(
            "::dbfork_client::test_database_async({}, {}).await",
            inputs, fill
        )
    } else {
        format!("::dbfork_client::test_database({}, {})", inputs, fill)
    };
    let call = format!("{name}({database}){}", if is_async { ".await" } else { "" });
    let marker = if is_async {
        "#[::tokio::test]"
    } else {
        "#[test]"
    };
    let head = format!("{}fn {name}()", if is_async { "async " } else { "" });
    let mut out: TokenStream = marker
        .parse()
        .map_err(|_| (name.span(), "internal".to_string()))?;
    out.extend(attributes);
    out.extend(
        head.parse::<TokenStream>()
            .map_err(|_| (name.span(), "internal".to_string()))?,
    );
    out.extend(returns);
    let mut body: TokenStream = function.iter().cloned().collect();
    body.extend(call.parse::<TokenStream>().map_err(|e| {
        (
            name.span(),
            format!("the arguments do not make an expression: {e}"),
        )
    })?);
    out.extend([TokenTree::Group(Group::new(Delimiter::Brace, body))]);
    Ok(out)
}

/// `compile_error!("message")` at `span`.
fn error(span: Span, message: &str) -> TokenStream {
    let mut out = TokenStream::new();
    out.extend([
        TokenTree::Ident(Ident::new("compile_error", span)),
        TokenTree::Punct(Punct::new('!', Spacing::Alone)),
    ]);
    let literal = TokenTree::Literal(proc_macro::Literal::string(message));
    let mut group = Group::new(Delimiter::Parenthesis, literal.into());
    group.set_span(span);
    out.extend([TokenTree::Group(group)]);
    let mut semi = TokenStream::new();
    semi.extend([TokenTree::Punct(Punct::new(';', Spacing::Alone))]);
    out.extend(semi);
    out
}
