"""Package list for setuptools: package_root/, core/ and plugins/ install as runink, runink.core, runink.plugins.

The static metadata is in pyproject.toml; this file walks the three folders (so a new plugin
sub-package needs no edit here) and builds the one native helper, ``runink-init``.
"""

import os
import shlex
import shutil
import subprocess
import sys

from setuptools import Command, Distribution, find_packages, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build import build

INIT_SOURCE = "plugins/executors/linux/runink_init.c"
INIT_PACKAGE = "runink.plugins.executors.linux"
INIT_NAME = "runink-init"


def packages_under(folder: str, import_name: str) -> list[str]:
    return [import_name] + [f"{import_name}.{pkg}" for pkg in find_packages(folder)]


class build_init(Command):
    """Compile runink-init (PID 1 of each slice sandbox) with the C compiler.

    Optional: without a compiler the package still installs and the linux executor uses a
    slower pure-Python init (a fork of the launcher per sandbox); `runink doctor` says so.
    """

    description = "compile the runink-init helper of the linux executor"
    user_options = []
    editable_mode = False  # set by setuptools for `pip install -e`: build next to the source

    def initialize_options(self) -> None:
        self.build_lib = None

    def finalize_options(self) -> None:
        self.set_undefined_options("build", ("build_lib", "build_lib"))

    def _target(self) -> str:
        if self.editable_mode:
            folder = self.get_finalized_command("build_py").get_package_dir(INIT_PACKAGE)
        else:
            folder = os.path.join(self.build_lib, *INIT_PACKAGE.split("."))
        return os.path.join(folder, INIT_NAME)

    def run(self) -> None:
        if not sys.platform.startswith("linux"):
            return
        compiler = shlex.split(os.environ.get("CC", "cc"))
        if shutil.which(compiler[0]) is None:
            self.warn(f"no C compiler ({compiler[0]}): {INIT_NAME} not built, the linux executor falls back to Python")
            return
        target = self._target()
        os.makedirs(os.path.dirname(target), exist_ok=True)
        command = [*compiler, "-O2", "-Wall", "-Wextra", "-o", target, INIT_SOURCE]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            self.warn(f"{INIT_NAME} not built ({shlex.join(command)}): {result.stderr.strip()}")

    def get_outputs(self) -> list[str]:
        target = self._target()
        return [target] if os.path.exists(target) else []


class PlatformDistribution(Distribution):
    def has_ext_modules(self) -> bool:  # the wheel carries a native binary: tag it for the platform
        return True


class PlatformWheel(bdist_wheel):
    """One wheel per platform for every Python 3: runink-init is a program, not an extension
    module, so no CPython version or ABI is in the tag (``py3-none-linux_x86_64``; auditwheel
    then makes that ``manylinux_2_17_x86_64``)."""

    def get_tag(self) -> tuple[str, str, str]:
        _python, _abi, platform = super().get_tag()
        return "py3", "none", platform


build.sub_commands.append(("build_init", None))

setup(
    distclass=PlatformDistribution,
    cmdclass={"build_init": build_init, "bdist_wheel": PlatformWheel},
    packages=[
        *packages_under("package_root", "runink"),
        *packages_under("core", "runink.core"),
        *packages_under("plugins", "runink.plugins"),
    ],
    # the vendored pysyncobj file ships with its licence beside it
    package_data={"runink": ["py.typed"], "runink.plugins.barn.raft._vendor.pysyncobj": ["LICENSE"]},
)
