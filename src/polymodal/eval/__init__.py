"""Evaluation: caption metrics, VQA accuracy, retrieval and zero-shot, key frames, pictures for people.

Nothing here trains; everything reads a model through its public methods.
"""
