"""Model wrappers the operators use, apart from the operators themselves: the CLIP image tower (`clip`), the
heads on its embeddings (`heads`), LAION's watermark network (`watermark_net`), exact ONNX graph rewrites for PP-OCR
(`onnxfold`), and the converters of published pickled weights (`convert`, run by `curation models pull`)."""
