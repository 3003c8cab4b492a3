"""The sandboxed kernel that grades one submission: bubblewrap around ipykernel.

`tito nbgrader setup` writes a Jupyter kernelspec into the course folder whose command is
`python -m tito.sandbox kernel ...`; nbgrader's Execute preprocessor starts it (the course
config names it as `Execute.kernel_name`) with its working directory set to the one
submission being graded, course/autograded/<student>/<module>/. This launcher is trusted
code that runs outside the sandbox:

1. it builds a private tinytorch package for that submission: a copy of the repository's
   tinytorch/ in which the graded module's file is the student's own export (or absent if
   the notebook exports nothing), so the reference solution is never visible;
2. it starts ipykernel under `bwrap` with a new root that holds only the Python
   installation (read-only), that package (read-only), the submission's folder (read-write)
   and an empty /tmp; no course folder, no gradebook, no other student, no home directory,
   no repository; every namespace unshared except the network (the kernel talks to
   nbgrader over localhost ZeroMQ); environment cleared;
3. before bwrap starts it sets the limits of the child: address space (memory), number of
   processes (a fork storm fails with EAGAIN), size of a file written; run as root it
   switches to an unprivileged uid of its own, because root ignores the process limit.

The kernel's output is capped on nbgrader's side by `LimitedExecute`, and the wall time of a
whole submission by `tito nbgrader autograde`, which runs each submission in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

KERNEL_NAME = "tinytorch-sandbox"
BUILD_MOUNT = "/opt/tinytorch-build"  # where the submission's own package appears in the sandbox
WORK_MOUNT = "/submission"  # where the submission's folder appears
SANDBOX_UID_BASE = 200_000  # run as root, each kernel gets uid BASE + (launcher pid % 50000)


@dataclass
class Limits:
    memory_mb: int = 2048  # address space of the kernel and everything it starts
    processes: int = 64  # processes (threads count too) the sandbox uid may own
    file_mb: int = 256  # largest file the kernel may write
    output_mb: int = 8  # notebook output kept per submission; the rest is dropped

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Limits.{name}={value!r}: expected a positive integer")


def bwrap() -> str | None:
    """The bubblewrap executable if it can make a sandbox here, else None."""
    path = shutil.which("bwrap")
    if path is None:
        return None
    try:
        proc = subprocess.run([path, "--ro-bind", "/", "/", "--unshare-all", "--share-net", "--die-with-parent", "true"],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path if proc.returncode == 0 else None


def kernelspec(repo_root: Path, limits: Limits) -> dict:
    """The kernel.json of the sandboxed kernel."""
    return {
        "argv": [sys.executable, "-m", "tito.sandbox", "kernel", "--repo", str(repo_root),
                 "--limits", json.dumps(asdict(limits)), "{connection_file}"],
        "display_name": "TinyTorch grading sandbox",
        "language": "python",
        "env": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])},  # so the launcher finds tito
    }


def _student_package(repo_root: Path, module_id: str, notebook: Path, build: Path) -> None:
    """build/tinytorch: the repository's package with the module's file made from `notebook`."""
    from tito import export, notebooks
    from tito.manifest import Repo

    repo = Repo.load(repo_root)
    module = repo.module(module_id)
    shutil.copytree(repo.root / "tinytorch", build / "tinytorch", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    target = build / module.target
    target.unlink(missing_ok=True)
    try:
        nb = notebooks.read_notebook(notebook)
        code = export.render(export.exported_code(nb, module, notebook.name),
                             [f"# the submission's own export of {notebook.name}"], notebook.name)
    except Exception:  # noqa: BLE001 - an unreadable or export-less notebook gets no module file
        return
    target.write_text(code, encoding="utf-8")


def _python_roots() -> list[str]:
    """The folders the kernel's Python needs: the installation and the virtual environment."""
    roots = []
    for p in (sys.base_prefix, sys.prefix):
        p = os.path.realpath(p)
        if p not in roots:
            roots.append(p)
    return roots


def installed_packages(roots: list[str]) -> list[str]:
    """Copies of tinytorch installed into a Python root (`pip install .`, not `-e`): the reference
    build, solutions and all. The sandbox covers each with an empty folder."""
    found = []
    for root in roots:
        for pattern in ("lib*/python*/site-packages/tinytorch", "lib*/python*/site-packages/tito"):
            found += sorted(str(p) for p in Path(root).glob(pattern) if p.is_dir())
    return found


# switch to the sandbox uid, then ask again to be killed when bwrap dies (a change of uid
# clears the parent-death signal that --die-with-parent set)
DROP = ("import ctypes, os, sys; u = int(sys.argv[1]); os.setgroups([]); os.setresgid(u, u, u); "
        "os.setresuid(u, u, u); ctypes.CDLL(None).prctl(1, 9, 0, 0, 0); os.execv(sys.argv[2], sys.argv[2:])")


KERNEL = [sys.executable, "-m", "ipykernel_launcher", "-f", "/run/kernel.json", "--HistoryManager.hist_file=:memory:"]


def command(bwrap_path: str, connection_fd: int | None, build_fd: int, work_fd: int, root_fds: dict[str, int],
            uid: int | None = None, info_fd: int | None = None, program: list[str] = KERNEL) -> list[str]:
    """The bwrap command line: binds by open file descriptor, so no path of the course is named.

    Run by a user, bwrap makes a user namespace (and every other one but the network's).
    Run by root, it makes the other namespaces without a user namespace and the kernel's
    first act is to switch to `uid`, a real unprivileged uid, so the process limit holds
    (root ignores RLIMIT_NPROC; a uid mapped to root in a user namespace is still root)."""
    if uid is None:
        cmd = [bwrap_path, "--unshare-all", "--share-net"]
    else:
        cmd = [bwrap_path, "--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try",
               "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    # --as-pid-1: the kernel itself is the namespace's first process, so the launcher can
    # forward nbgrader's interrupt to it (bwrap is kept out of the signal's way) and
    # everything it starts dies with it
    cmd += ["--die-with-parent", "--as-pid-1", "--clearenv"]
    if info_fd is not None:
        cmd += ["--info-fd", str(info_fd)]
    for path in ("/usr", "/etc/alternatives", "/etc/ld.so.cache", "/etc/localtime"):
        if os.path.exists(path):
            cmd += ["--ro-bind", path, path]
    for link in ("bin", "lib", "lib64", "sbin"):
        target = os.readlink(f"/{link}") if os.path.islink(f"/{link}") else None
        if target:
            cmd += ["--symlink", target, f"/{link}"]
        elif os.path.isdir(f"/{link}"):
            cmd += ["--ro-bind", f"/{link}", f"/{link}"]
    made = set()

    def parents(dest: str) -> list[str]:
        # bwrap makes missing folders root-only (0700); the unprivileged kernel must pass through them
        out = []
        parts = Path(dest).parts[1:-1]
        for i in range(len(parts)):
            folder = "/" + "/".join(parts[: i + 1])
            if folder not in made:
                made.add(folder)
                out += ["--perms", "0755", "--dir", folder]
        return out

    # /tmp first: a Python installed under /tmp (a virtual environment there) is bound over it
    # /dev/shm writable too: multiprocessing keeps its locks and shared arrays there
    cmd += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm",
            "--perms", "1777", "--tmpfs", "/tmp"]
    made.add("/tmp")
    for path, fd in root_fds.items():
        cmd += parents(path) + ["--ro-bind-fd", str(fd), path]
    for path in installed_packages(list(root_fds)):  # a regular install holds the reference solutions
        cmd += ["--perms", "0755", "--tmpfs", path]
    cmd += [*parents(BUILD_MOUNT), "--ro-bind-fd", str(build_fd), BUILD_MOUNT,
            "--bind-fd", str(work_fd), WORK_MOUNT, "--perms", "0755", "--dir", "/run"]
    if connection_fd is not None:
        cmd += ["--perms", "0644", "--file", str(connection_fd), "/run/kernel.json"]
    cmd += ["--chdir", WORK_MOUNT]
    env = {"PATH": f"{os.path.dirname(sys.executable)}:/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": BUILD_MOUNT,
           "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg", "MPLCONFIGDIR": "/tmp", "LANG": "C.UTF-8",
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "NBGRADER_EXECUTION": "autograde", "JUPYTER_PLATFORM_DIRS": "1"}
    for key, value in env.items():
        cmd += ["--setenv", key, value]
    cmd.append("--")
    if uid is not None:
        cmd += [sys.executable, "-I", "-c", DROP, str(uid)]
    return cmd + list(program)


def _limit(limits: Limits):
    def apply():
        # no new session: the kernel stays in the launcher's process group, which nbgrader's SIGINT reaches
        mem = limits.memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        nproc = limits.processes
        if os.geteuid() != 0:  # a user's limit counts all their processes: allow this many more
            nproc += _processes_of(os.getuid())
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        size = limits.file_mb << 20
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def _processes_of(uid: int) -> int:
    """Threads owned by `uid` now (RLIMIT_NPROC counts threads)."""
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                pass
    return count


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of `uid` (a sandbox uid: nothing else runs as it)."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                pass


def _chown_tree(path: Path, uid: int, gid: int | None = None) -> None:
    gid = uid if gid is None else gid
    for folder, dirs, files in os.walk(path):
        os.chown(folder, uid, gid)
        for name in dirs + files:
            os.chown(os.path.join(folder, name), uid, gid, follow_symlinks=False)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError:
        pass


def _read_info(fd: int) -> dict:
    """bwrap's --info-fd JSON (the kernel's pid as we see it); {} if bwrap failed before writing it."""
    data = b""
    with os.fdopen(fd, "rb") as f:
        while True:
            chunk = f.read1(4096)
            if not chunk:
                break
            data += chunk
            try:
                return json.loads(data)
            except ValueError:
                continue
    return {}


def kernel_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tito.sandbox kernel")
    parser.add_argument("--repo", required=True)
    parser.add_argument("--limits", required=True)
    parser.add_argument("connection_file")
    args = parser.parse_args(argv)
    limits = Limits(**json.loads(args.limits))
    path = bwrap()
    if path is None:
        print("tito.sandbox: bubblewrap (bwrap) cannot make a sandbox here; refusing to run the kernel", file=sys.stderr)
        return 3
    work = Path.cwd()  # nbgrader starts the kernel in the submission's autograded folder
    notebooks_here = sorted(work.glob("*.ipynb"))
    with tempfile.TemporaryDirectory(prefix="tito-sandbox-") as tmp:
        build = Path(tmp) / "build"
        build.mkdir()
        if notebooks_here:
            _student_package(Path(args.repo), work.name, notebooks_here[0], build)
        return run(path, work, build, limits, KERNEL, connection_file=args.connection_file, forward_signals=True)


def run(bwrap_path: str, work: Path, build: Path, limits: Limits, program: list[str],
        connection_file: str | None = None, forward_signals: bool = False) -> int:
    """Run `program` in the sandbox with `work` as its writable /submission and `build` as its
    tinytorch; its exit status. Run as root, the program runs as a sandbox uid of its own, and
    every process of that uid is killed when it ends."""
    uid = None
    owner = work.stat()
    if os.geteuid() == 0:
        uid = SANDBOX_UID_BASE + os.getpid() % 50_000
        os.chmod(build.parent, 0o755)
        _chown_tree(work, uid)
    fds = {}
    try:
        connection_fd = os.open(connection_file, os.O_RDONLY) if connection_file else None
        build_fd = os.open(build, os.O_PATH | os.O_DIRECTORY)
        work_fd = os.open(work, os.O_PATH | os.O_DIRECTORY)
        for root in _python_roots():
            fds[root] = os.open(root, os.O_PATH | os.O_DIRECTORY)
        info_read, info_write = os.pipe()
        cmd = command(bwrap_path, connection_fd, build_fd, work_fd, fds, uid, info_write, program)
        opened = [fd for fd in (connection_fd, build_fd, work_fd, *fds.values()) if fd is not None]
        child = []
        if forward_signals:
            # nbgrader interrupts a cell with SIGINT to our process group; bwrap runs in a group
            # of its own (SIGINT would end it) and we pass the signal on to the kernel alone
            signal.signal(signal.SIGINT, lambda *_: child and _signal(child[0], signal.SIGINT))
        proc = subprocess.Popen(cmd, pass_fds=[info_write, *opened], preexec_fn=_limit(limits), cwd="/",
                                process_group=0)
        if forward_signals:
            signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
        os.close(info_write)
        for fd in opened:
            os.close(fd)
        info = _read_info(info_read)
        if "child-pid" in info:
            child.append(int(info["child-pid"]))
        return proc.wait()
    finally:
        if uid is not None:
            _kill_uid(uid)  # whatever the program started and left behind
            if work.is_dir():
                _chown_tree(work, owner.st_uid, owner.st_gid)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "kernel":
        sys.exit(kernel_main(sys.argv[2:]))
    print("usage: python -m tito.sandbox kernel --repo DIR --limits JSON CONNECTION_FILE", file=sys.stderr)
    sys.exit(2)
