"""Steps that run on a ``datasets.Dataset``'s rows when they are read, stacked.

``Dataset.with_transform`` holds one callable, run in ``__getitem__`` on a batch (a dict of column lists), so in the
DataLoader workers. Lazy frame decoding (:class:`~spa3_vlm.data.lazy_frames.DecodeFrames`) and the Spa3R latent lookup
(:class:`~spa3_vlm.data.latent_cache.LatentLookup`) are one step each: :func:`add_row_transform` appends a step to the
ones a dataset already runs.

Reading a column of such a dataset (``dataset["frames_key"]``) runs every step on every row, i.e. decodes every
video; :func:`raw_column` reads what is stored instead, and :func:`row_columns` names the columns a read row has.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["RowTransforms", "add_row_transform", "raw_column", "row_columns"]


class RowTransforms:
    """Steps applied in order to a batch dict; each returns the batch with its columns added."""

    def __init__(self, steps: tuple[Callable[[dict], dict], ...]):
        self.steps = tuple(steps)

    def __call__(self, batch: dict) -> dict:
        for step in self.steps:
            batch = step(batch)
        return batch

    def __repr__(self) -> str:
        return f"RowTransforms({', '.join(type(step).__name__ for step in self.steps)})"


def add_row_transform(dataset, step: Callable[[dict], dict]):
    """A copy of ``dataset`` that runs ``step`` after the row steps it already runs (its stored table is shared)."""
    form = dataset.format
    if form["type"] == "custom":
        if form["output_all_columns"] or set(form["columns"]) != set(dataset.column_names):
            raise ValueError(
                "the dataset's transform reads only some columns (with_transform(columns=...)); add steps to a "
                "dataset whose transform sees every column"
            )
        current = form["format_kwargs"]["transform"]
        steps = current.steps if isinstance(current, RowTransforms) else (current,)
    elif form["type"] is None:
        steps = ()
    else:
        raise ValueError(
            f"the dataset is formatted as {form['type']!r}; row steps work on python rows: reset_format() first"
        )
    return dataset.with_transform(RowTransforms(steps + (step,)))


def raw_column(dataset, name: str) -> list:
    """The stored values of column ``name`` (rows in the dataset's order), without running any row step."""
    if name not in dataset.column_names:
        raise ValueError(f"the dataset has no stored {name!r} column (columns: {dataset.column_names})")
    return dataset.with_format("arrow")[name].to_pylist()


def row_columns(dataset) -> list[str]:
    """Columns of a row as read (stored columns plus those the row steps add; reads one row if it has steps)."""
    if dataset.format["type"] != "custom" or len(dataset) == 0:
        return list(dataset.column_names)
    return list(dataset[0])
