"""HTTP/1.1 and HTTPS proxying in a worker: routing, codec, answers, TLS, the session shell."""
