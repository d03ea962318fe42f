"""Calibration targets: a plain checkerboard or a ChArUco board, their detection and their picture.

Both are described by their number of *squares* (``squares_x`` across, ``squares_y`` down) and
the square side in metres; a checkerboard's inner corners are then (squares_x-1) x (squares_y-1),
the grid OpenCV's checkerboard functions expect. Board coordinates: origin at the top-left outer
corner of the printed board, x to the right, y down, z into the board, in metres.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

KINDS = ("checkerboard", "charuco")


class BoardError(ValueError):
    """A board description that cannot be used."""


@dataclass(frozen=True)
class BoardSpec:
    kind: str
    squares_x: int
    squares_y: int
    square: float  # metres
    marker: float | None = None  # ChArUco marker side, metres
    dictionary: str = "DICT_5X5_100"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise BoardError(f"board kind must be one of {KINDS}, got {self.kind!r}")
        if self.squares_x < 3 or self.squares_y < 3:
            raise BoardError(f"a board needs at least 3x3 squares, got {self.squares_x}x{self.squares_y}")
        if self.square <= 0:
            raise BoardError(f"square size must be > 0 m, got {self.square}")
        if self.kind == "charuco":
            if self.marker is None or not 0 < self.marker < self.square:
                raise BoardError(f"a ChArUco marker must be smaller than the square, got {self.marker}")
            if not hasattr(cv2.aruco, self.dictionary):
                raise BoardError(f"unknown ArUco dictionary {self.dictionary!r}")

    @classmethod
    def parse(cls, text: str) -> BoardSpec:
        """``checkerboard:10x7:0.025`` or ``charuco:10x7:0.04:0.03[:DICT_5X5_100]`` (squares, metres)."""
        parts = text.split(":")
        try:
            kind, grid, square = parts[0], parts[1], float(parts[2])
            sx, sy = (int(v) for v in grid.lower().split("x"))
            marker = float(parts[3]) if kind == "charuco" else None
            if kind != "charuco" and len(parts) != 3:
                raise ValueError("extra fields")
        except (IndexError, ValueError) as e:
            raise BoardError(
                f"board {text!r}: expected checkerboard:<squares_x>x<squares_y>:<square_m> or "
                "charuco:<squares_x>x<squares_y>:<square_m>:<marker_m>[:<dictionary>]"
            ) from e
        if kind == "charuco":
            return cls(kind, sx, sy, square, marker, *(parts[4:5] or ["DICT_5X5_100"]))
        return cls(kind, sx, sy, square)

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {
            "kind": self.kind,
            "squares_x": self.squares_x,
            "squares_y": self.squares_y,
            "square_m": self.square,
        }
        if self.kind == "charuco":
            d |= {"marker_m": self.marker, "dictionary": self.dictionary}
        return d

    @property
    def size_m(self) -> tuple[float, float]:
        return self.squares_x * self.square, self.squares_y * self.square

    @property
    def orientation_unique(self) -> bool:
        """Whether a detection fixes the board's pose (not so for a 180°-symmetric checkerboard)."""
        return self.kind == "charuco" or (self.squares_x + self.squares_y) % 2 == 1

    @property
    def inner_corners(self) -> tuple[int, int]:
        return self.squares_x - 1, self.squares_y - 1

    def corner_points(self) -> np.ndarray:
        """All inner corners in board coordinates, row by row, ``[N, 3]`` float32."""
        nx, ny = self.inner_corners
        xs, ys = np.meshgrid(np.arange(1, nx + 1), np.arange(1, ny + 1))
        pts = np.stack([xs.ravel(), ys.ravel(), np.zeros(nx * ny)], axis=1) * self.square
        return pts.astype(np.float32)

    def charuco_board(self) -> cv2.aruco.CharucoBoard:
        dictionary = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary))
        return cv2.aruco.CharucoBoard((self.squares_x, self.squares_y), self.square, self.marker, dictionary)

    def image(self, px_per_square: int = 80, margin_squares: float = 0.5) -> tuple[np.ndarray, float, int]:
        """The printable board as a grey image; returns (image, pixels per metre, margin in pixels)."""
        margin = round(margin_squares * px_per_square)
        w, h = self.squares_x * px_per_square, self.squares_y * px_per_square
        if self.kind == "charuco":
            img = self.charuco_board().generateImage((w + 2 * margin, h + 2 * margin), marginSize=margin)
        else:
            yy, xx = np.mgrid[0:h, 0:w] // px_per_square
            board = np.where((xx + yy) % 2 == 0, 0, 255).astype(np.uint8)
            img = np.full((h + 2 * margin, w + 2 * margin), 255, np.uint8)
            img[margin : margin + h, margin : margin + w] = board
        return img, px_per_square / self.square, margin


@dataclass(frozen=True)
class Detection:
    image_points: np.ndarray  # [N, 2] float32 pixels
    object_points: np.ndarray  # [N, 3] float32 board coordinates (m)
    ids: np.ndarray  # [N] which board corners were seen (row-major inner-corner index)


def detect(board: BoardSpec, image: np.ndarray, min_corners: int = 6) -> Detection | None:
    """The board's corners in ``image`` (grey or RGB) with sub-pixel accuracy, or None if not seen."""
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if board.kind == "charuco":
        corners, ids, _, _ = cv2.aruco.CharucoDetector(board.charuco_board()).detectBoard(gray)
        if ids is None or len(ids) < min_corners:
            return None
        ids = ids.ravel().astype(int)
        # The ChArUco detector's corners sit half a pixel off OpenCV's pixel-centre convention
        # (measured on rendered boards at several scales); cornerSubPix on the grey image puts them
        # back on the saddle points, to ~0.01 px on synthetic boards.
        pts = corners.reshape(-1, 1, 2).astype(np.float32)
        spacing = np.min(np.linalg.norm(np.diff(pts.reshape(-1, 2), axis=0), axis=1)) if len(pts) > 1 else 20
        win = int(np.clip(spacing * 0.25, 2, 11))
        criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 50, 1e-4)
        pts = cv2.cornerSubPix(gray, pts, (win, win), (-1, -1), criteria)
        return Detection(pts.reshape(-1, 2), board.corner_points()[ids], ids)
    found, corners = cv2.findChessboardCornersSB(gray, board.inner_corners, flags=cv2.CALIB_CB_ACCURACY)
    if not found:
        return None
    # findChessboardCornersSB lists the corners starting from the far end of our board coordinates
    # (checked on rendered boards in every orientation): reverse to match ``corner_points``. Only a
    # board with squares_x + squares_y odd looks different turned by 180°, so only for such a board
    # is this ordering the true one; ``BoardSpec.orientation_unique`` says which.
    corners = corners.reshape(-1, 2).astype(np.float32)[::-1].copy()
    return Detection(corners, board.corner_points(), np.arange(len(corners)))
