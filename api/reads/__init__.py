"""The api's read path: where a read goes (routing.py: the replica or the primary, the
database cap), the look-aside cache of rendered views in Redis (cache.py), the cached views
themselves (views.py: a job, a share link's view, a driver's position), the fast path that
answers them beneath FastAPI's routing (fast.py), and what a job's view adds to its row
(extras.py: the driver's live position and ETA, a track's time span)."""
