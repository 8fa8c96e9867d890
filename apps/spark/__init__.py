"""Apache Spark on the mesh: a leased master, workers on capable nodes, jobs reading and
writing buckets (see docs/spark.md)."""
