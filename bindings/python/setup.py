"""Builds the wheel: the native library compiled by Cargo from the workspace two levels up, and
the Python module uniffi generates from it, beside the hand-written package.

The profile is `release` unless FIELDSYNC_CARGO_PROFILE names another (`debug` reuses the
build the workspace's tests made).
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

from setuptools import setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent
WORKSPACE = HERE.parent.parent


def workspace_version() -> str:
    """The workspace's version (`[workspace.package]` of Cargo.toml): one version everywhere."""
    manifest = WORKSPACE / "Cargo.toml"
    if not manifest.exists():
        sys.exit(
            "fieldsync builds from the Fieldsync repository: install it with "
            "`pip install ./bindings/python` from a clone, not from an sdist"
        )
    text = manifest.read_text() + "\n["
    section = re.search(r"^\[workspace\.package\]$(.*?)^\[", text, re.M | re.S)
    version = section and re.search(r'^version\s*=\s*"([^"]+)"', section.group(1), re.M)
    if not version:
        sys.exit("Cargo.toml has no `version` in [workspace.package]")
    return version.group(1)


def library_file_name() -> str:
    if sys.platform == "darwin":
        return "libfieldsync_ffi.dylib"
    if sys.platform == "win32":
        return "fieldsync_ffi.dll"
    return "libfieldsync_ffi.so"


class BuildNative(build_py):
    """The pure-Python files as usual, then the library and its generated module."""

    def run(self) -> None:
        super().run()
        profile = os.environ.get("FIELDSYNC_CARGO_PROFILE", "release")
        # Cargo calls the debug profile `dev` and keeps its output in `debug`.
        cargo_profile = "dev" if profile in ("debug", "dev") else profile
        profile_dir = "debug" if cargo_profile == "dev" else profile
        cargo = os.environ.get("CARGO", "cargo")
        subprocess.run(
            [cargo, "build", "--profile", cargo_profile, "-p", "fieldsync-ffi"],
            cwd=WORKSPACE,
            check=True,
        )
        metadata = subprocess.run(
            [cargo, "metadata", "--format-version", "1", "--no-deps"],
            cwd=WORKSPACE,
            check=True,
            capture_output=True,
            text=True,
        )
        target = pathlib.Path(json.loads(metadata.stdout)["target_directory"]) / profile_dir
        library = target / library_file_name()
        bindgen = target / ("uniffi-bindgen.exe" if sys.platform == "win32" else "uniffi-bindgen")
        package = pathlib.Path(self.build_lib) / "fieldsync"
        package.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as generated:
            subprocess.run(
                [
                    str(bindgen),
                    "generate",
                    "--library",
                    str(library),
                    "--language",
                    "python",
                    "--out-dir",
                    generated,
                ],
                cwd=WORKSPACE,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            # The generated module is the package's private half; `__init__.py` wraps it.
            module = pathlib.Path(generated) / "fieldsync.py"
            (package / "_native.py").write_bytes(module.read_bytes())
        (package / library.name).write_bytes(library.read_bytes())


class PlatformWheel(bdist_wheel):
    """A wheel for this platform only (it carries a native library), for any Python 3: the
    library is loaded with ctypes, not built against Python's ABI."""

    def finalize_options(self) -> None:
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self) -> tuple[str, str, str]:
        _, _, platform = super().get_tag()
        return "py3", "none", platform


if __name__ == "__main__":
    setup(
        version=workspace_version(),
        cmdclass={"build_py": BuildNative, "bdist_wheel": PlatformWheel},
    )
