"""Test helpers of the shop example: a generic model builder and schema test cases.

`make(Model, **overrides)` saves an instance of any model of the project,
filling every required field with a deterministic value and creating the
targets of required foreign keys recursively.

`schema_test_cases(app_label)` returns Django TestCase classes whose test
methods are generated from the app's models:

* RoundTrip: every model can be saved and read back with the same values
  (the objects are created once, in setUpTestData);
* OnDelete: every foreign key behaves as its on_delete says (CASCADE deletes
  the child, PROTECT raises ProtectedError, SET_NULL clears the column);
* Constraints: every unique field, unique_together and check constraint is
  enforced by the database (IntegrityError);
* ManyToMany: every many-to-many relation can be filled and read back.
"""
import datetime
import itertools
import uuid
from decimal import Decimal

from django.apps import apps
from django.db import IntegrityError, models, transaction
from django.db.models.deletion import ProtectedError
from django.test import TestCase

BASE_TIME = datetime.datetime(2025, 1, 15, 12, 0, tzinfo=datetime.timezone.utc)
_counter = itertools.count(1)


def _value(field, n):
    name = field.model._meta.model_name
    if field.choices:
        return field.choices[0][0]
    if isinstance(field, models.EmailField):
        return f"{name}.{n}@example.test"
    if isinstance(field, models.URLField):
        return f"https://example.test/{name}/{n}"
    if isinstance(field, models.SlugField):
        value = f"{name}-x{n}"
    elif isinstance(field, models.GenericIPAddressField):
        return "192.0.2.%d" % (n % 250 + 1)
    elif isinstance(field, (models.CharField, models.TextField)):
        value = f"{name}-x{n}"
    elif isinstance(field, models.UUIDField):
        return uuid.UUID(int=n)
    elif isinstance(field, models.DecimalField):
        return Decimal("1.00")
    elif isinstance(field, models.FloatField):
        return 1.5
    elif isinstance(field, (models.IntegerField, models.BigIntegerField, models.SmallIntegerField)):
        return 1
    elif isinstance(field, models.BooleanField):
        return False
    elif isinstance(field, models.DateTimeField):
        return BASE_TIME
    elif isinstance(field, models.DateField):
        return BASE_TIME.date()
    elif isinstance(field, models.DurationField):
        return datetime.timedelta(minutes=n)
    elif isinstance(field, models.JSONField):
        return {"n": n}
    else:  # pragma: no cover - the schema uses only the types above
        raise TypeError(f"no test value for {field!r}")
    max_length = field.max_length or len(value)
    return value if len(value) <= max_length else str(n)[-max_length:]


def build(model, **overrides):
    """An unsaved instance of `model` (required FK targets are saved)."""
    n = next(_counter)
    kwargs = {}
    for field in model._meta.concrete_fields:
        if field.primary_key or field.name in overrides or field.attname in overrides:
            continue
        if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
            continue
        if field.is_relation:
            if not field.null:
                kwargs[field.name] = make(field.related_model)
            continue
        if field.has_default() and not (field.unique and not isinstance(field, models.UUIDField)):
            continue
        if field.null:
            continue
        if isinstance(field, models.CharField) and field.has_default() and not field.unique:
            continue
        kwargs[field.name] = _value(field, n)
    kwargs.update(overrides)
    return model(**kwargs)


def make(model, **overrides):
    """Save and return an instance of `model` (a model class or "app.Model")."""
    if isinstance(model, str):
        model = apps.get_model(model)
    obj = build(model, **overrides)
    obj.save()
    return obj


def _comparable(obj):
    return {
        f.attname: getattr(obj, f.attname)
        for f in obj._meta.concrete_fields
        if not getattr(f, "auto_now", False) and not isinstance(f, (models.FloatField,))
    }


def _app_models(app_label):
    return sorted(apps.get_app_config(app_label).get_models(), key=lambda m: m._meta.model_name)


def _roundtrip_case(app_label):
    app_models = _app_models(app_label)

    @classmethod
    def setUpTestData(cls):
        cls.objects_by_model = {m: make(m) for m in app_models}

    attrs = {"setUpTestData": setUpTestData, "__module__": f"{app_label}.tests.test_schema"}
    for model in app_models:
        def test(self, model=model):
            obj = self.objects_by_model[model]
            reloaded = model.objects.get(pk=obj.pk)
            self.assertEqual(_comparable(reloaded), _comparable(obj))
            self.assertEqual(str(reloaded), str(obj))
            self.assertTrue(str(reloaded))
        attrs[f"test_{model._meta.model_name}_roundtrip"] = test
    return type(f"{app_label.title()}RoundTripTests", (TestCase,), attrs)


def _fk_fields(app_label):
    for model in _app_models(app_label):
        for field in model._meta.concrete_fields:
            if isinstance(field, models.ForeignKey):
                yield model, field


def _on_delete_case(app_label):
    attrs = {"__module__": f"{app_label}.tests.test_schema"}
    for model, field in _fk_fields(app_label):
        rule = field.remote_field.on_delete.__name__

        def test(self, model=model, field=field, rule=rule):
            target = make(field.related_model)
            child = make(model, **{field.name: target})
            if rule == "CASCADE":
                target.delete()
                self.assertFalse(model.objects.filter(pk=child.pk).exists())
            elif rule == "PROTECT":
                with self.assertRaises(ProtectedError):
                    target.delete()
                self.assertTrue(model.objects.filter(pk=child.pk).exists())
            elif rule == "SET_NULL":
                target.delete()
                child.refresh_from_db()
                self.assertIsNone(getattr(child, field.attname))
            else:  # pragma: no cover
                self.fail(f"unexpected on_delete {rule}")
        name = f"test_{model._meta.model_name}_{field.name}_{rule.lower()}"
        attrs[name] = test
    return type(f"{app_label.title()}OnDeleteTests", (TestCase,), attrs)


def _constraint_case(app_label):
    attrs = {"__module__": f"{app_label}.tests.test_schema"}

    def assert_integrity_error(self, model, **values):
        with self.assertRaises(IntegrityError), transaction.atomic():
            make(model, **values)

    attrs["assert_integrity_error"] = assert_integrity_error
    for model in _app_models(app_label):
        mname = model._meta.model_name
        for field in model._meta.concrete_fields:
            if not field.unique or field.primary_key:
                continue

            def test(self, model=model, field=field):
                value = make(field.related_model) if field.is_relation else None
                first = make(model, **({field.name: value} if value is not None else {}))
                self.assert_integrity_error(model, **{field.attname: getattr(first, field.attname)})
            attrs[f"test_{mname}_{field.name}_unique"] = test
        for group in model._meta.unique_together:
            def test(self, model=model, group=group):
                values = {}
                for name in group:
                    f = model._meta.get_field(name)
                    values[name] = make(f.related_model) if f.is_relation else _value(f, next(_counter))
                make(model, **values)
                self.assert_integrity_error(model, **values)
            attrs[f"test_{mname}_{'_'.join(group)}_unique_together"] = test
        for constraint in model._meta.constraints:
            if not isinstance(constraint, models.CheckConstraint):
                continue
            ((lookup, bound),) = constraint.condition.children
            fname, _, op = lookup.partition("__")
            assert op == "gte", constraint

            def test(self, model=model, fname=fname, bound=bound):
                make(model, **{fname: bound})  # the bound itself is allowed
                self.assert_integrity_error(model, **{fname: bound - 1})
            attrs[f"test_{mname}_{constraint.name}_check"] = test
    return type(f"{app_label.title()}ConstraintTests", (TestCase,), attrs)


def _m2m_case(app_label):
    attrs = {"__module__": f"{app_label}.tests.test_schema"}
    for model in _app_models(app_label):
        for field in model._meta.local_many_to_many:
            def test(self, model=model, field=field):
                obj = make(model)
                targets = [make(field.related_model) for _ in range(3)]
                getattr(obj, field.name).add(*targets)
                self.assertEqual(
                    sorted(getattr(obj, field.name).values_list("pk", flat=True)),
                    sorted(t.pk for t in targets),
                )
                reverse = field.related_query_name()
                self.assertEqual(
                    model.objects.filter(**{f"{field.name}__in": targets}).distinct().count(), 1
                )
                self.assertEqual(field.related_model.objects.filter(**{reverse: obj}).count(), 3)
            attrs[f"test_{model._meta.model_name}_{field.name}_m2m"] = test
    if len(attrs) == 1:
        return None
    return type(f"{app_label.title()}ManyToManyTests", (TestCase,), attrs)


def schema_test_cases(app_label):
    """TestCase classes generated from the models of `app_label` (see module doc)."""
    cases = [_roundtrip_case(app_label), _on_delete_case(app_label), _constraint_case(app_label),
             _m2m_case(app_label)]
    return [c for c in cases if c is not None]
