"""The annotators' review page, the dataset report and build statistics."""
