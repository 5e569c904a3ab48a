"""Running tasks: the executor claims work through the replica and runs it in
worker threads (executor.py); runners.py turns a task into engine calls;
rag_service.py loads the models and owns the engine.

May import: node.replica, node.rag, node.config.  Never consensus/ or node.http.
"""
