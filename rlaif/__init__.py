"""rlaif: RLAIF preference generation and iterative DPO."""
__version__ = "0.1.0"
