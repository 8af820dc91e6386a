"""The prose extractor behind the real model's SAE text, on a hand-written reStructuredText page."""

from gremlinkit.zoo import english

PAGE = """\
:mod:`shelve` --- Python object persistence
===========================================

.. module:: shelve
   :synopsis: Python object persistence.

A "shelf" is a persistent, dictionary-like object. Use :func:`open` to
get one, as the `tutorial <https://example.org>`_ shows::

   import shelve
   d = shelve.open(filename)

.. function:: open(filename, flag='c')

   Open a persistent dictionary. The filename specified is the base filename
   for the underlying database.

.. code-block:: python

   print("this is code, not prose")

>>> 1 + 1
2

* A list item that is long enough to count as a sentence here.
:param flag: a field list line
"""


def test_paragraphs_keep_prose_and_drop_code_directives_and_sessions():
    got = english.paragraphs(PAGE)
    assert got == [
        'A "shelf" is a persistent, dictionary-like object. Use open to get one, as the tutorial shows.',
        "Open a persistent dictionary. The filename specified is the base filename for the underlying database.",
        "A list item that is long enough to count as a sentence here.",
    ]
    assert not any("print" in p or "shelve.open" in p or "1 + 1" in p for p in got)
