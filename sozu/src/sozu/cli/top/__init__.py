"""`sozu top`: a live terminal view of the proxy over the command socket."""
