"""Tests for meshnode.storage."""
