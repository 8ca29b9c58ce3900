"""Distribution on Ray: the cluster, Gram actors, the width x data mesh, how a net is split over
the width group (parallelize), and the DeepSpeed engine. Importing it imports nothing heavy."""
