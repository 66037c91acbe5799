"""LLM Studio: own your models on Ray — data, fine-tuning, serving, gateway, evaluation."""

__version__ = "0.1.0"
