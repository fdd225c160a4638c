"""The model wing: shared layers, attention, and the model families (BERT today)."""
