"""Operations, one module per family: locations, snapping, neurons, mapping, updates, lineage,
validity, cutouts, voxels. Each holds pure per-block kernels, thin graph builders and eager wrappers."""
