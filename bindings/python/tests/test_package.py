"""The package as pip installs it: built from the workspace with its native library, tagged for
this platform, carrying its metadata and type information, exporting exactly its public API."""

import importlib.metadata
import os
import pathlib
import re
import sys

import fieldsync
from fieldsync import _native

ROOT = pathlib.Path(__file__).resolve().parents[3]
PACKAGE = pathlib.Path(fieldsync.__file__).parent


def test_the_installed_package_is_the_one_under_test():
    # scripts/test sets this: the suite must run against the package pip installed into its
    # fresh virtual environment, never the source tree.
    if os.environ.get("FIELDSYNC_EXPECT_INSTALLED") == "1":
        assert PACKAGE.is_relative_to(pathlib.Path(sys.prefix))
        assert not PACKAGE.is_relative_to(ROOT / "bindings/python")
    assert (PACKAGE / "_native.py").is_file()
    assert any(PACKAGE.glob("*fieldsync_ffi.*"))


def test_the_wheel_is_for_this_platform_and_carries_its_metadata():
    distribution = importlib.metadata.distribution("fieldsync")
    wheel = distribution.read_text("WHEEL")
    assert "Root-Is-Purelib: false" in wheel
    tags = re.findall(r"^Tag: (\S+)$", wheel, re.M)
    assert tags and all(not tag.endswith("-any") for tag in tags), tags
    assert all(tag.startswith("py3-none-") for tag in tags), tags

    workspace = (ROOT / "Cargo.toml").read_text()
    version = re.search(r'\[workspace\.package\]\s*version = "([^"]+)"', workspace).group(1)
    metadata = distribution.metadata
    assert metadata["Version"] == version
    assert metadata["License-Expression"] == "MPL-2.0"
    assert metadata["Requires-Python"] == ">=3.10"
    assert "offline-first" in metadata["Summary"].lower()
    assert "Typing :: Typed" in metadata.get_all("Classifier")
    # The README is the long description.
    assert "pip install ./bindings/python" in metadata.get_payload()
    assert any(str(path).endswith("LICENSE") for path in distribution.files)
    assert (PACKAGE / "py.typed").is_file()
    assert (PACKAGE / "__init__.pyi").is_file()


def test_all_is_exactly_the_public_api_sorted():
    assert fieldsync.__all__ == sorted(fieldsync.__all__)
    assert len(set(fieldsync.__all__)) == len(fieldsync.__all__)
    for name in fieldsync.__all__:
        assert hasattr(fieldsync, name), name
        assert not name.startswith("_")
        assert not name.endswith(("Protocol", "Impl")), name
    assert "Any" not in fieldsync.__all__ and "Mapping" not in fieldsync.__all__
    # Every public type the library generates is exported, so a new one is not forgotten; not
    # uniffi's plumbing (protocols, the handles of foreign traits implemented in Rust, its
    # internal error).
    plumbing = {name for name in _native.__all__ if name.endswith(("Protocol", "Impl"))}
    generated = set(_native.__all__) - plumbing - {"InternalError"}
    assert plumbing and not plumbing & set(fieldsync.__all__)
    assert generated <= set(fieldsync.__all__), generated - set(fieldsync.__all__)
    expected_extras = {
        "AsyncStore", "attach", "field_value", "fields", "plain_value", "save_attachment",
        "uniffi_set_event_loop", "values",
    }
    assert set(fieldsync.__all__) - generated == expected_extras
    # `from fieldsync import *` brings exactly these names.
    namespace = {}
    exec("from fieldsync import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(fieldsync.__all__)


def test_the_stub_declares_every_public_name():
    stub = (PACKAGE / "__init__.pyi").read_text()
    for name in fieldsync.__all__:
        assert re.search(rf"^(class|def) {name}\b", stub, re.M), name
    assert re.search(r"^__all__ = \[(.*?)\]", stub, re.M | re.S).group(1).split() == [
        f'"{name}",' for name in fieldsync.__all__
    ]
