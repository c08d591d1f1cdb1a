"""`corral submit|jobs|status|results`: a command-line client of a Corral server over HTTP."""
