"""The node's `query` service: which segments of each camera's latest frame fit some texts.

Answered from the embeddings kept with the latest frame, so the network is not run again; the
texts encode on a thread of their own (milliseconds once cached, seconds for new texts on a CPU)
while the service callback, a coroutine, holds no executor thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rclpy.task import Future

from fcclip_ros.msg import QueryResult
from fcclip_ros.srv import Query
from fcclip_ros.text_embeddings import QueryError, TextQueries, parse_query_texts, rank_segments

if TYPE_CHECKING:
    from fcclip_ros.ros.camera import Camera
    from fcclip_ros.ros.node import SegmenterNode


class QueryService:
    def __init__(self, node: SegmenterNode) -> None:
        self._node = node
        self._encoding = threading.Lock()  # one query's texts encode at a time

    def create_service(self, group: Any) -> Any:
        return self._node.create_service(Query, "query", self._query, callback_group=group)

    async def _query(self, request: Query.Request, response: Query.Response) -> Query.Response:
        texts = list(request.texts)
        try:
            cameras = self._cameras_named(request.camera)
            parse_query_texts(texts)  # refuse bad input before any work
            queries = await self._off_the_executor(lambda: self._encode(texts))
        except QueryError as error:
            response.success, response.message = False, str(error)
            return response
        answered, waiting = [], []
        for camera in cameras:
            latest = camera.latest
            if latest is None:
                waiting.append(camera.topic)
                continue
            answered.append(camera.topic)
            order, scores = rank_segments(queries, latest.embeddings)
            top_k = request.top_k or len(latest.segment_ids)
            for text, rows, row_scores in zip(texts, order, scores, strict=True):
                response.results.append(QueryResult(
                    camera=self._node.resolve_topic_name(camera.topic), text=text,
                    header=latest.header,
                    segment_ids=[latest.segment_ids[row] for row in rows[:top_k]],
                    scores=row_scores[:top_k].tolist(),
                ))
        no_frame = f"no segmented frame with embeddings yet from {', '.join(waiting)}"
        response.success = bool(answered)
        response.message = (f"{len(texts)} texts scored on the latest frame of "
                            f"{', '.join(answered)}" + (f"; {no_frame}" if waiting else "")
                            if answered else no_frame)
        return response

    def _cameras_named(self, name: str) -> list[Camera]:
        cameras, resolve = self._node.cameras, self._node.resolve_topic_name
        if not name.strip():
            return list(cameras)
        wanted = resolve(name.strip())
        for camera in cameras:
            if resolve(camera.topic) == wanted:
                return [camera]
        known = ", ".join(resolve(camera.topic) for camera in cameras)
        raise QueryError(f"unknown camera {name!r}; the node's cameras: {known}")

    def _encode(self, texts: list[str]) -> TextQueries:
        if not self._encoding.acquire(blocking=False):
            raise QueryError("busy: another query's texts are being encoded; try again")
        try:
            return self._node.engine.encode_texts(texts)
        finally:
            self._encoding.release()

    def _off_the_executor(self, work: Callable[[], Any]) -> Future:
        """Run `work` on a thread of its own; the future (completed on the node's executor)
        gets its result, or raises its QueryError when awaited."""
        finished = Future(executor=self._node.executor)
        finished.add_done_callback(lambda _: None)  # so that completing it wakes the executor

        def run() -> None:
            try:
                finished.set_result(work())
            except QueryError as error:
                finished.set_exception(error)
            except Exception as error:  # whatever happened, the caller gets an answer
                finished.set_exception(QueryError(f"the query failed: {error!r}"))

        threading.Thread(target=run, name="fcclip-query", daemon=True).start()
        return finished
