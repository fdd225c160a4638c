"""Task scores as their official tools define them: SQuAD's evaluation scripts, seqeval for NER,
accuracy for multiple choice. NumPy and the standard library only (seqeval for NER)."""
