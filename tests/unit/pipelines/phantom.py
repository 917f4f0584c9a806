"""Moved to ``tests.support.phantom``; this name stays only while test_seg.py still uses it.

test_seg.py is being changed on another branch; once it imports ``tests.support.phantom``,
delete this file.
"""

from tests.support.phantom import CtPhantom

__all__ = ["CtPhantom"]
