"""Packaging pyproject.toml cannot express: the pipeline files live at the top of the repository
(users edit them there, as DVC keeps dvc.yaml), and the wheel ships them inside the package as
`mbv3_mobile.pipelines`, so an installed `mbv3` finds them from any folder. Everything else about
the project is in pyproject.toml."""

from setuptools import find_namespace_packages, setup

setup(
    # namespace packages, as pyproject's `packages.find` finds them: the harness's data folders
    # (runner/, ios/) are packages of their own there
    packages=[*find_namespace_packages("src", include=["mbv3_mobile*"]),
              *find_namespace_packages(".", include=["mobile_harness*"]), "mbv3_mobile.pipelines"],
    package_dir={"": "src", "mobile_harness": "mobile_harness", "mbv3_mobile.pipelines": "pipelines"},
)
