from pathlib import Path

import pandas as pd
import pytest

EXAMPLES = Path(__file__).parents[3] / "examples" / "data"


@pytest.fixture
def penguins_csv() -> Path:
    return EXAMPLES / "penguins.csv"


@pytest.fixture
def penguins_raw_csv() -> Path:
    return EXAMPLES / "penguins-raw.csv"


@pytest.fixture
def penguins(penguins_csv: Path) -> pd.DataFrame:
    return pd.read_csv(penguins_csv, engine="pyarrow")
