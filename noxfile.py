"""Developer sessions: ``nox -s lint typing docs tests``.

``tests`` runs every tier (unit, kernel, vm, client); a tier that cannot run on this
machine skips with a one-line reason. Pass pytest arguments after ``--``, e.g.
``nox -s tests -- -m "not vm"``.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typing", "docs", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting of src/, tests/, benchmarks/."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "src", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "noxfile.py")


@nox.session
def typing(session: nox.Session) -> None:
    """mypy --strict on src/."""
    session.install("-e", ".[typing]")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation with warnings as errors."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", "--site-dir", f"{session.create_tmp()}/site")


@nox.session
def tests(session: nox.Session) -> None:
    """All test tiers."""
    session.install("-e", ".[tests]")
    session.run("pytest", *session.posargs)


@nox.session
def protos(session: nox.Session) -> None:
    """Regenerate the committed gRPC modules of src/sriovlib/agent/api/ from their protos."""
    session.install(".[protos]")
    session.run("python", "scripts/gen-protos")


@nox.session
def benchmarks(session: nox.Session) -> None:
    """Run every benchmark in benchmarks/ and print its figures."""
    session.install("-e", ".")
    for script in sorted(__import__("pathlib").Path("benchmarks").glob("*.py")):
        session.run("python", str(script))
