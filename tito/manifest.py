"""The one list of modules: `modules/manifest.toml`, and how to find the repository it lives in.

Every command starts here: `Repo.find()` locates the repository root (an explicit
`--root`, else the TITO_ROOT environment variable, else the nearest folder above the
current directory that holds `modules/manifest.toml`), reads the manifest, and answers
questions such as "which module is `15`?". Nothing else in the project lists modules.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from tito.console import TitoError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

MANIFEST = Path("modules") / "manifest.toml"
SCHEMA = 1
FIELDS = {
    "number": int,
    "slug": str,
    "title": str,
    "source": str,
    "target": str,
    "tests": str,
    "prerequisites": list,
    "points": int,
}
KIND_NAMES = {int: "an integer", str: "a string", list: "a list"}


@dataclass(frozen=True)
class Module:
    number: int
    slug: str
    title: str
    source: str  # path of the jupytext source, relative to the repository root
    target: str  # generated package file, e.g. tinytorch/profiling.py
    tests: str  # pytest folder of the module
    prerequisites: tuple[str, ...]  # ids of modules to complete first
    points: int

    @property
    def id(self) -> str:
        return f"{self.number:02d}_{self.slug}"

    @property
    def export_name(self) -> str:
        """The name `#| default_exp` must give: the target's path inside tinytorch/, dotted."""
        return ".".join(Path(self.target).with_suffix("").parts[1:])


@dataclass(frozen=True)
class Repo:
    root: Path
    modules: tuple[Module, ...]

    @classmethod
    def find(cls, explicit: str | os.PathLike | None = None) -> "Repo":
        return cls.load(find_root(explicit))

    @classmethod
    def load(cls, root: Path) -> "Repo":
        return cls(root=root, modules=tuple(read_manifest(root / MANIFEST)))

    @property
    def workspace(self) -> Path:
        return self.root / "workspace"

    def path(self, relative: str) -> Path:
        return self.root / relative

    def env(self, first: Path | None = None) -> dict:
        """The environment for processes tito starts (kernels, pytest, nbgrader, Jupyter Lab):
        `first` (a build), then this repository, on PYTHONPATH, so they import this checkout's
        tinytorch; this Python's scripts folder first on PATH (nbgrader runs `alembic` by name,
        which an unactivated virtual environment would not find)."""
        env = dict(os.environ)
        scripts = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([scripts] + [p for p in env.get("PATH", "").split(os.pathsep) if p and p != scripts])
        paths = [str(p) for p in (first, self.root) if p is not None]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env

    def module(self, name: str | int) -> Module:
        """The module called `name`: its number (`14`), id (`14_profiling`) or slug (`profiling`)."""
        text = str(name).strip()
        for m in self.modules:
            if text in (m.id, m.slug) or (text.isdigit() and int(text) == m.number):
                return m
        valid = ", ".join(m.id for m in self.modules)
        raise TitoError(
            f"unknown module {text!r}; expected one of: {valid} (the number or the slug alone also works)"
        )

    def select(self, names: list[str], all_modules: bool) -> list[Module]:
        if all_modules and names:
            raise TitoError("give module names or --all, not both")
        if all_modules:
            return list(self.modules)
        if not names:
            raise TitoError("name at least one module, or pass --all")
        return [self.module(n) for n in names]

    def source_or_error(self, module: Module) -> Path:
        """The module's source file; a clear error when it has not been written yet."""
        path = self.path(module.source)
        if not path.is_file():
            raise TitoError(f"module {module.id} has no source yet: {module.source}")
        return path


def find_root(explicit: str | os.PathLike | None = None) -> Path:
    """The repository root: explicit path, else $TITO_ROOT, else search upward from the cwd."""
    given = explicit or os.environ.get("TITO_ROOT")
    if given:
        root = Path(given).expanduser().resolve()
        if not (root / MANIFEST).is_file():
            origin = "--root" if explicit else "TITO_ROOT"
            raise TitoError(f"{origin}={given} is not a TinyTorch repository: it has no {MANIFEST}")
        return root
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / MANIFEST).is_file():
            return folder
    raise TitoError(
        f"not inside a TinyTorch repository: no {MANIFEST} in {here} or any folder above it; "
        "cd into your checkout, or pass --root PATH"
    )


def read_manifest(path: Path) -> list[Module]:
    """Parse and check the manifest; every error names the file, the module and the field."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise TitoError(f"{path} is not valid TOML: {exc}") from exc
    if data.get("schema") != SCHEMA:
        raise TitoError(f"{path}: schema = {data.get('schema')!r}; expected schema = {SCHEMA}")
    entries = data.get("modules")
    if not isinstance(entries, list) or not entries:
        raise TitoError(f"{path}: expected one or more [[modules]] tables")
    modules: list[Module] = []
    for i, entry in enumerate(entries, start=1):
        where = f"{path}, module #{i}"
        for field, kind in FIELDS.items():
            if field not in entry:
                raise TitoError(f"{where}: missing field {field!r}")
            if not isinstance(entry[field], kind) or isinstance(entry[field], bool):
                raise TitoError(f"{where}: {field} = {entry[field]!r}; expected {KIND_NAMES[kind]}")
        unknown = set(entry) - set(FIELDS)
        if unknown:
            raise TitoError(f"{where}: unknown field(s) {sorted(unknown)}; expected only {sorted(FIELDS)}")
        module = Module(**{**entry, "prerequisites": tuple(entry["prerequisites"])})
        target = Path(module.target)
        if target.parts[0] != "tinytorch" or target.suffix != ".py" or len(target.parts) < 2:
            raise TitoError(f"{where}: target = {module.target!r}; expected a path like tinytorch/NAME.py")
        earlier = {m.id for m in modules}
        for prereq in module.prerequisites:
            if prereq not in earlier:
                raise TitoError(
                    f"{where}: prerequisite {prereq!r} is not an earlier module; expected one of {sorted(earlier)}"
                )
        if module.number in {m.number for m in modules} or module.slug in {m.slug for m in modules}:
            raise TitoError(f"{where}: number {module.number} or slug {module.slug!r} is used twice; expected unique ones")
        if module.points <= 0:
            raise TitoError(f"{where}: points = {module.points}; expected a positive number")
        modules.append(module)
    return modules
