"""The paper's 13 wildlife classes, their instance counts, and the authors' label spellings."""

CLASSES = (
    "giraffe", "person", "zebra", "elephant", "impala", "monkey", "lion",
    "leopard", "crocodile", "buffalo", "hyena", "bird", "gorilla",
)

# Instances per class as printed in the paper's dataset table.  They add up to 1409, although
# the paper's text says 1309.
PAPER_COUNTS = {
    "giraffe": 101, "person": 152, "zebra": 131, "elephant": 166, "impala": 169, "monkey": 80,
    "lion": 108, "leopard": 63, "crocodile": 61, "buffalo": 97, "hyena": 70, "bird": 123,
    "gorilla": 88,
}
PAPER_TOTAL_STATED = 1309

# Label spellings found in the authors' annotations -> our class names.
ALIASES = {"hyna": "hyena"}
# How the embedded generator writes labels (mimicking the authors' files).
VOC_SPELLING = {"hyena": "hyna"}

assert tuple(PAPER_COUNTS) == CLASSES and sum(PAPER_COUNTS.values()) == 1409
