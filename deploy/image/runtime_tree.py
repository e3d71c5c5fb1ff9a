"""Copy a Python runtime and one virtualenv into an empty root, so the image's last stage can be
`FROM scratch`.

Why: the exporter needs an interpreter, its standard library, the venv and the shared libraries they load, and
nothing else: no shell, no package manager, no pip. Copying exactly that out of the official slim image (the
build stage) keeps its tested CPython build while leaving every tool an attacker could use behind.

What is copied, found from the interpreter itself rather than from a hard-coded layout (so the same script
works on `python:3.12-slim`, with Python under /usr/local, and on a Debian base, with Python under /usr):
- the venv, and the interpreter its `bin/python` points to (symlinks kept as symlinks, targets copied too);
- the standard library directories (`sysconfig` paths `stdlib` and `platstdlib`) minus tests, idle, ensurepip;
- every shared library that the interpreter and each extension module needs (`ldd`), plus the dynamic loader
  and `libgcc_s` (glibc loads it at run time to unwind a thread on `pthread_exit`, which ldd cannot see);
- CA certificates and `nsswitch.conf` when present, and a passwd/group naming the numeric user the image
  runs as.

Usage (build stage): python3 runtime_tree.py VENV ROOT
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

RUNTIME_UID = 65532  # the "nonroot" user of distroless images: a well-known, unprivileged numeric id
SKIPPED_STDLIB = frozenset({"test", "idlelib", "ensurepip", "tkinter", "turtledemo", "lib2to3", "pydoc_data"})
OPTIONAL_FILES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/nsswitch.conf")
LDD_PATH = re.compile(r"(/\S+)")


def copy_path(source: str, root: Path) -> None:
    """Copy one file, directory entry or symlink to the same path under `root`.

    Symlinks stay symlinks and their targets are copied too, and so are symlinked parent directories
    (`/lib64 -> usr/lib64`, `/lib -> usr/lib` on merged-/usr systems), so every path the loader or Python asks
    for resolves in the copy exactly as it does in the source.
    """
    pending = [source]
    seen: set[str] = set()
    while pending:
        path = os.path.normpath(pending.pop())
        if path in seen or not os.path.lexists(path):
            continue
        seen.add(path)
        pending.extend(_make_parents(path, root))
        target = root / path.lstrip("/")
        if os.path.islink(path):
            link = os.readlink(path)
            if not target.is_symlink():
                target.symlink_to(link)
            pending.append(os.path.join(os.path.dirname(path), link))
        elif os.path.isdir(path):
            target.mkdir(exist_ok=True)
        elif not target.exists():
            shutil.copy2(path, target)


def _make_parents(path: str, root: Path) -> list[str]:
    """Create the parents of `path` under `root`, symlinks where the source has them; return their targets."""
    targets = []
    current = "/"
    for part in Path(path).parent.parts[1:]:
        current = os.path.join(current, part)
        copy = root / current.lstrip("/")
        if os.path.islink(current):
            if not copy.is_symlink():
                copy.symlink_to(os.readlink(current))
            resolved = os.path.join(os.path.dirname(current), os.readlink(current))
            targets.append(resolved)
            (root / os.path.normpath(resolved).lstrip("/")).mkdir(parents=True, exist_ok=True)
        elif not copy.is_symlink():
            copy.mkdir(exist_ok=True)
    return targets


def copy_tree(source: str, root: Path, skip: frozenset[str] = frozenset()) -> list[str]:
    """Copy a directory tree (symlinks as symlinks) but for the directories named in `skip` and a top-level
    site-packages (the base interpreter's own, which a venv does not use); return the shared objects copied.
    """
    shared_objects = []
    for directory, subdirs, files in os.walk(source):
        subdirs[:] = [d for d in subdirs if not _skipped(d, skip, top=directory == source)]
        copy_path(directory, root)
        for name in files:
            path = os.path.join(directory, name)
            if name.endswith(".exe"):  # Windows launchers that pip and setuptools ship
                continue
            copy_path(path, root)
            if ".so" in name and os.path.isfile(path) and not os.path.islink(path):
                shared_objects.append(path)
        for name in subdirs:
            full = os.path.join(directory, name)
            if os.path.islink(full):
                copy_path(full, root)
    return shared_objects


def _skipped(name: str, skip: frozenset[str], *, top: bool) -> bool:
    # config-3.X-<triplet> holds the static libpython and Makefile for building extensions: tens of MB.
    return name in skip or name.startswith("config-") or (top and name == "site-packages")


def shared_libraries(binaries: list[str]) -> set[str]:
    """Every library `ldd` resolves for these ELF files, the dynamic loader included."""
    found: set[str] = set()
    for binary in binaries:
        result = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False)  # noqa: S603,S607
        for line in result.stdout.splitlines():
            if "not found" in line:
                raise SystemExit(f"{binary}: {line.strip()}")
            found.update(match for match in LDD_PATH.findall(line) if os.path.exists(match))
    return found


def write_accounts(root: Path) -> None:
    """A passwd and group with only root and the runtime user, so tools that look up the uid find a name."""
    etc = root / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "passwd").write_text(
        f"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{RUNTIME_UID}:{RUNTIME_UID}::/nonexistent:/sbin/nologin\n"
    )
    (etc / "group").write_text(f"root:x:0:\nnonroot:x:{RUNTIME_UID}:\n")
    tmp = root / "tmp"
    tmp.mkdir(exist_ok=True)
    tmp.chmod(0o1777)


def stdlib_directories(python: Path) -> list[str]:
    """The standard library of the venv's own interpreter (not of whichever Python runs this script)."""
    code = "import sysconfig; print(sysconfig.get_path('stdlib')); print(sysconfig.get_path('platstdlib'))"
    result = subprocess.run([str(python), "-I", "-c", code], capture_output=True, text=True, check=True)  # noqa: S603
    return sorted(set(result.stdout.split()))


def build(venv: Path, root: Path) -> None:
    interpreter = os.path.realpath(venv / "bin" / "python")
    stdlib_dirs = stdlib_directories(venv / "bin" / "python")
    root.mkdir(parents=True, exist_ok=True)
    binaries = [interpreter, *copy_tree(str(venv), root)]
    copy_path(str(venv / "bin" / "python"), root)
    for directory in stdlib_dirs:
        binaries += copy_tree(directory, root, SKIPPED_STDLIB)
    libraries = shared_libraries(binaries)
    for library in sorted(libraries):
        copy_path(library, root)
    # libgcc_s sits beside libc wherever the distribution puts it.
    for directory in sorted({os.path.dirname(library) for library in libraries}):
        copy_path(os.path.join(directory, "libgcc_s.so.1"), root)
    for path in OPTIONAL_FILES:
        copy_path(path, root)
    write_accounts(root)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    build(Path(argv[0]).absolute(), Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
