"""Bulk upsampling: resumable, ordered output of many requests on a local engine, a served engine or a
Ray cluster (see :mod:`kgen.bulk.job`)."""
