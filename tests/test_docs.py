"""Every config key is documented: the reference tables are what users read."""
import pytest

from twist.config import PRETRAIN
from twist.eval.config import EVAL


@pytest.mark.parametrize("schema, doc", [(PRETRAIN, "docs/config.md"), (EVAL, "docs/evaluation.md")])
def test_every_key_has_a_row_in_its_reference(schema, doc):
    text = open(doc, encoding="utf-8").read()
    missing = [key for key in schema.leaves if f"`{key}`" not in text]
    assert not missing, f"{doc} does not document {missing}"
