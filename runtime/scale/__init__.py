"""Scale-out on Ray (extra ``ray``): Ray Serve for online traffic (``serve_ray``), Ray Data for bulk jobs
(``batch_ray``). Ray is imported only inside these modules, so the base install stays lean."""
