"""`curation label`: a local web page for labelling an annotation set 1-5 for the expert quality scorer."""
