"""Test-data generators: the labeled sample set (`samples`) and the hostile corpus (`hostile`). Not imported by the
pipeline; `curation samples make`, `curation scorer demo` and the tests use them."""
