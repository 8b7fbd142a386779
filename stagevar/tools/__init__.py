"""The workbench on top of the library's public API: the interleaved runner (:mod:`.runner`),
measuring (:mod:`.timing`, :mod:`.metrics`), pictures (:mod:`.figures`), and the tools built on
them -- :mod:`.bench`, :mod:`.quality`, :mod:`.calibrate`, :mod:`.generate`, :mod:`.demo` -- with
the command line (:mod:`.cli`) that parses and prints. Nothing in the library imports this package."""
