"""Locate onnxruntime's C/C++ API headers for building the custom-op library.

No PyPI onnxruntime wheel ships its headers. Search order:
1. ``ORT_INCLUDE_DIR`` (must contain ``onnxruntime_c_api.h``);
2. system include dirs (``/usr/include/onnxruntime``, ``/usr/local/include/onnxruntime``, ...);
3. a previous fetch in ``third_party/onnxruntime`` (git-ignored);
4. fetch Debian 13 (trixie)'s ``libonnxruntime-dev`` with ``apt-get download`` against a scratch
   sources list built from the machine's own Debian archive source, and unpack it with ``dpkg -x``.

Runs on the build machine only; standard library only so that setup.py can import it.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HEADER = "onnxruntime_c_api.h"
SYSTEM_DIRS = (
    "/usr/include/onnxruntime",
    "/usr/local/include/onnxruntime",
    "/usr/include/onnxruntime/core/session",
    "/usr/local/include",
    "/usr/include",
)
DEBIAN_SUITE = "trixie"
DEBIAN_PACKAGE = "libonnxruntime-dev"


def _log(msg: str) -> None:
    print(f"[bort-infer build] {msg}", file=sys.stderr, flush=True)


def _has_header(d: str | os.PathLike) -> bool:
    return (Path(d) / HEADER).is_file()


def _find_under(root: Path) -> Path | None:
    hits = sorted(root.rglob(HEADER))
    return hits[0].parent if hits else None


def _debian_archive_source() -> tuple[str, str]:
    """(URI, keyring) of the machine's own Debian archive apt source (not -security, not third party)."""
    entries: list[tuple[str, str, str]] = []  # (uri, suites, keyring)
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        for stanza in Path(path).read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "uris" in fields:
                entries.append((fields["uris"].split()[0], fields.get("suites", ""), fields.get("signed-by", "")))
    one_line = ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]
    for path in one_line:
        if not os.path.isfile(path):
            continue
        for line in Path(path).read_text().splitlines():
            m = re.match(r"^\s*deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)", line)
            if m:
                opts = dict(o.split("=", 1) for o in (m.group(1) or "").split() if "=" in o)
                entries.append((m.group(2), m.group(3), opts.get("signed-by", "")))
    for uri, suites, keyring in entries:
        if "debian" in uri and "security" not in uri and "security" not in suites:
            if not keyring:
                keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
            return uri, keyring
    raise RuntimeError("no Debian archive source found in /etc/apt (needed to fetch libonnxruntime-dev)")


def fetch_debian_headers(dest: Path) -> Path:
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        raise RuntimeError("apt-get/dpkg not available to fetch libonnxruntime-dev")
    uri, keyring = _debian_archive_source()
    _log(f"fetching {DEBIAN_PACKAGE} from Debian '{DEBIAN_SUITE}' ({uri})")
    with tempfile.TemporaryDirectory(prefix="bort-ort-apt-") as tmp:
        tmp_path = Path(tmp)
        sources = tmp_path / "sources.list"
        sources.write_text(f"deb [signed-by={keyring}] {uri} {DEBIAN_SUITE} main\n")
        parts = tmp_path / "parts"
        lists = tmp_path / "lists"
        cache = tmp_path / "cache"
        for d in (parts, lists / "partial", cache / "archives" / "partial"):
            d.mkdir(parents=True)
        opts = [
            f"-o=Dir::Etc::sourcelist={sources}",
            f"-o=Dir::Etc::sourceparts={parts}",
            f"-o=Dir::State::Lists={lists}",
            f"-o=Dir::Cache={cache}",
            "-o=Debug::NoLocking=1",
            "-o=APT::Sandbox::User=root",
        ]
        subprocess.run(["apt-get", *opts, "-qq", "update"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", *opts, "-qq", "download", DEBIAN_PACKAGE], check=True, cwd=tmp,
                       stdout=subprocess.DEVNULL)
        debs = sorted(tmp_path.glob(f"{DEBIAN_PACKAGE}_*.deb"))
        if not debs:
            raise RuntimeError(f"apt-get download produced no {DEBIAN_PACKAGE} .deb")
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        subprocess.run(["dpkg", "-x", str(debs[0]), str(dest)], check=True)
    found = _find_under(dest)
    if found is None:
        raise RuntimeError(f"{debs[0].name} holds no {HEADER}")
    return found


def find_ort_include_dir(project_root: Path) -> Path:
    env = os.environ.get("ORT_INCLUDE_DIR")
    if env:
        if not _has_header(env):
            raise RuntimeError(f"ORT_INCLUDE_DIR={env} does not contain {HEADER}")
        return Path(env)
    for d in SYSTEM_DIRS:
        if _has_header(d):
            return Path(d)
    vendored = project_root / "third_party" / "onnxruntime"
    if vendored.is_dir():
        found = _find_under(vendored)
        if found is not None:
            return found
    try:
        return fetch_debian_headers(vendored)
    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        raise RuntimeError(
            "onnxruntime C/C++ API headers not found. Set ORT_INCLUDE_DIR to a folder holding "
            f"{HEADER}, install Debian's {DEBIAN_PACKAGE}, or allow apt-get to fetch it "
            f"(attempt failed: {exc})"
        ) from exc


if __name__ == "__main__":
    print(find_ort_include_dir(Path(__file__).resolve().parent.parent))
