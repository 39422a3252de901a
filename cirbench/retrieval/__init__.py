"""From a Task to a Run: encoders' vectors, exact search, rerankers."""
