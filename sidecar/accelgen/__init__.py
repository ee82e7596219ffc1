"""AccelGen: heterogeneous-SLO scheduling for LLM serving (Shen & Sen, arXiv 2503.13737)."""

__version__ = "0.1.0"
