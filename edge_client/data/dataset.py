"""Plain containers passed between the data loaders, the partitioner and the trainer.

They are frozen dataclasses of plain lists so that a trainer can consume them without
knowing where the data came from (the bundled 20 Newsgroups pool or a user's file).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsa_common.wire.errors import UserError


class DataError(ValueError, UserError):
    """A data source that cannot be read as asked: names the file, line and column at fault.

    A ``ValueError`` so that CLI layers can report it like any other bad input.
    """

    option = "--data"


@dataclass(frozen=True)
class RawRows:
    """Rows as read from a source, labels still as strings (mapped to ids later).

    Readers stay ignorant of label ordering and class filtering, which depend on the spec.
    ``lines`` keeps each row's line in its file so later errors can point at it.
    """

    texts: tuple[str, ...]
    labels: tuple[str, ...]
    owners: tuple[str, ...] | None = None
    lines: tuple[int, ...] | None = None


@dataclass(frozen=True)
class TextDataset:
    """Texts with integer labels; ``label_names[i]`` names label id ``i``.

    ``owners`` holds, per row, the value of the spec's client column when there is one.
    Prompt/response data (``format=prompt_response``) keeps prompts in ``texts`` and the
    answers in ``responses``; its labels are all 0 and it has no label names.
    """

    texts: list[str]
    labels: list[int]
    label_names: list[str]
    owners: list[str] | None = None
    responses: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: list[int]) -> TextDataset:
        """The rows at ``indices``, in that order, sharing this dataset's label names."""
        owners = None if self.owners is None else [self.owners[i] for i in indices]
        responses = None if self.responses is None else [self.responses[i] for i in indices]
        return TextDataset(
            texts=[self.texts[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            label_names=list(self.label_names),
            owners=owners,
            responses=responses,
        )


@dataclass(frozen=True)
class DeviceData:
    """One device's share of the pool, already split into its own train and test sets.

    ``num_labels``/``label_names`` describe the whole (filtered) pool, not just this share,
    so every device builds a classifier head of the same shape even if it lacks classes
    (0 and none for prompt/response data).
    """

    train: TextDataset
    test: TextDataset
    num_labels: int
    label_names: list[str]

    @property
    def prompt_response(self) -> bool:
        """Prompt/response pairs for a causal language model, not labelled texts."""
        return self.train.responses is not None
