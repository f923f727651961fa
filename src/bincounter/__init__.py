"""bincounter: count the items in a storage-bin photo (Amazon Bin Image Dataset, 1..5 items)."""

__version__ = "0.1.0"

#: The task: a bin holds 1..5 items. Class index i <-> count COUNTS[i]. One definition, used everywhere.
COUNTS: tuple[int, ...] = (1, 2, 3, 4, 5)
