"""dbfork's ``sitecustomize``: in a process dbfork starts (``DBFORK_SOCKET``
is set), Django's test runners get dbfork's mixin in front
(``dbfork_django.runner_class``): ``django.test.utils.get_runner`` returns the
runner class with it, and a ``DiscoverRunner`` (or subclass) made directly is
made as that class.

So every command that runs Django's test runner the usual way becomes a dbfork
worker with nothing added to its command line: ``manage.py test``,
``django-admin test``, scripts such as Django's own ``tests/runtests.py`` that
take their runner from ``get_runner(settings)``, and ``runtests.py`` scripts
that make ``DiscoverRunner(...)`` themselves (django-simple-history's). Outside
dbfork this module only hands over to the environment's own
``sitecustomize``, if there is one.

With ``dbfork run --cov`` it also starts coverage.py in every process,
first of all (see ``_start_coverage``).

dbfork writes this file as ``sitecustomize.py`` into the directory it puts
first on the workers' ``PYTHONPATH``; it is not installed by the wheel.
"""

import importlib.machinery
import importlib.util
import os
import sys

_UTILS = "django.test.utils"
_RUNNER = "django.test.runner"


def _wrap_get_runner(module):
    original = module.get_runner

    def get_runner(settings, test_runner_class=None):
        import dbfork_django

        return dbfork_django.runner_class(original(settings, test_runner_class))

    get_runner.__doc__ = original.__doc__
    get_runner.__wrapped__ = original
    module.get_runner = get_runner


def _mix_on_new(module):
    """A ``DiscoverRunner`` made directly (``DiscoverRunner(...)``, not the
    class ``get_runner`` returns) is made as the class with the mixin in
    front; ``__init__`` then runs as usual with the caller's arguments."""
    base = module.DiscoverRunner
    original = base.__dict__.get("__new__")

    def __new__(cls, *args, **kwargs):
        import dbfork_django

        mixed = dbfork_django.runner_class(cls)
        if original is not None:
            return original(mixed, *args, **kwargs)
        return object.__new__(mixed)

    base.__new__ = staticmethod(__new__)


_PATCHES = {_UTILS: _wrap_get_runner, _RUNNER: _mix_on_new}


class _AfterImport:
    """Finds the modules in ``_PATCHES`` as usual and patches each right
    after it ran, before anyone can import a name from it."""

    def find_spec(self, name, path=None, target=None):
        patch = _PATCHES.get(name)
        if patch is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            patch(module)

        spec.loader.exec_module = exec_module
        return spec


def _install():
    waiting = False
    for name, patch in _PATCHES.items():
        if name in sys.modules:
            patch(sys.modules[name])
        else:
            waiting = True
    if waiting:
        sys.meta_path.insert(0, _AfterImport())


def _chain():
    """Runs the environment's own ``sitecustomize`` (a virtualenv's or the
    distribution's), which this module hides by coming first on the path."""
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # as site.py treats a failing sitecustomize
        sys.stderr.write("Error in sitecustomize (%s); set PYTHONVERBOSE for traceback\n" % e)


def _start_coverage():
    """``dbfork run --cov`` (``DBFORK_COV``): this process measures coverage
    with coverage.py from its very start (as ``coverage run --parallel-mode``
    does, with the project's own configuration): when it exits, on SIGTERM
    too, its data goes to a ``.coverage.<host>.<pid>.<random>`` file of its
    own, and dbfork combines the files of every process at the end."""
    try:
        import coverage
    except ImportError:
        sys.stderr.write(
            "dbfork: --cov: coverage.py is not installed in this environment (%s); "
            "install it (pip install coverage)\n" % sys.executable
        )
        return
    cov = coverage.Coverage(data_suffix=True, auto_data=True, config_file=True)
    # dbfork's own modules (written for this run, gone after it) are not
    # the project's code.
    # (A pattern takes no brackets: `?` stands for them.)
    here = os.path.dirname(os.path.abspath(__file__))
    here = here.replace("[", "?").replace("]", "?")
    cov.set_option("run:omit", list(cov.get_option("run:omit") or []) + [here + os.sep + "*"])
    try:
        cov.set_option("run:sigterm", True)
    except Exception:  # a coverage.py older than 6.4 has no such option
        pass
    cov.start()


if os.environ.get("DBFORK_COV"):
    try:
        _start_coverage()
    except Exception as e:  # never in the way of the adapter: said, and measured no more
        sys.stderr.write("dbfork: --cov: coverage.py could not start in this process: %r\n" % (e,))
if os.environ.get("DBFORK_SOCKET"):
    _install()
_chain()
