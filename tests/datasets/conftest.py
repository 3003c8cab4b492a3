"""Shared fixtures: the README of tinytorch.datasets and its count tables."""

import re

import pytest

from tinytorch.datasets import DATA_DIR


@pytest.fixture(scope="session")
def readme():
    return (DATA_DIR / "README.md").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def readme_table(readme):
    """read(marker) -> rows of the table between <!-- marker --> and <!-- /marker -->.

    Each row is a list of cell strings; the header and separator lines are skipped.
    """

    def read(marker):
        match = re.search(rf"<!-- {marker} -->\n(.*?)\n<!-- /{marker} -->", readme, re.S)
        assert match, f"README.md has no <!-- {marker} --> table"
        lines = match.group(1).strip().splitlines()[2:]
        return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]

    return read


@pytest.fixture(scope="session")
def readme_file_sizes(readme):
    """{file name: bytes} from the README's file table (rows with a byte count)."""
    sizes = {}
    for line in readme.splitlines():
        match = re.fullmatch(r"\| `([\w.]+)` \| ([\d,]+) \| .*", line)
        if match:
            sizes[match.group(1)] = int(match.group(2).replace(",", ""))
    return sizes
