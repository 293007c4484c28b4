"""The README's model table is the package's own output."""

from pathlib import Path

import pytest

from keras_deeplab.zoo import markdown_table, zoo_rows

README = Path(__file__).parents[1] / "README.md"


def _readme_rows():
    text = README.read_text()
    table = text.split("<!-- zoo-table:start -->")[1].split("<!-- zoo-table:end -->")[0]
    return {line.split("|")[1].strip(" `"): line for line in table.strip().splitlines()[2:]}


def _generated(names):
    rows = markdown_table(zoo_rows(names)).splitlines()[2:]
    return {line.split("|")[1].strip(" `"): line for line in rows}


def test_readme_table_lists_every_registered_model():
    from keras_deeplab import list_models

    assert sorted(_readme_rows()) == list_models()


@pytest.mark.parametrize("name", ["deeplabv3_mobilenetv2_dm05_os8", "deeplabv3plus_mobilenetv2"])
def test_readme_rows_match_package(name):
    assert _readme_rows()[name] == _generated([name])[name]


@pytest.mark.slow
def test_readme_table_matches_package():
    assert _readme_rows() == _generated(None)
