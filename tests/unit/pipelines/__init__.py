"""Unit tests of the pipelines package (mirrors pipelines/)."""
