//! Entry points shared by the fuzz targets and the corpus test.
