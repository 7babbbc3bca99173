"""sev-bench: benchmark harness for emotion control of chat LLMs on SEV."""

__version__ = "0.1.0"
