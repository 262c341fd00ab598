"""fastcnn.sklearn.CNNClassifier: scikit-learn's estimator checks, Pipeline, GridSearchCV,
partial_fit and pickling."""
import pickle

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="pip install .[sklearn]")

from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fastcnn.sklearn import CNNClassifier  # noqa: E402


# Every applicable check runs.  Two are skipped by scikit-learn itself (SkipTest) in this
# environment: check_array_api_input (needs SCIPY_ARRAY_API=1 and an array-API library) and
# check_classifier_data_not_an_array (it raises SkipTest when pandas is not installed;
# pandas is not a dependency).
@parametrize_with_checks([CNNClassifier()])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _images(n=120, seed=0):
    """Three classes of 1x8x8 images: a bright bar in the top rows, the middle, or the left columns."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.random((n, 1, 8, 8)).astype(np.float32) * 0.5
    x[y == 0, :, :2, :] += 1
    x[y == 1, :, 3:5, :] += 1
    x[y == 2, :, :, :2] += 1
    return x, np.array(["top", "middle", "left"])[y]


def test_images_pipeline_and_grid_search():
    x, y = _images()
    pipe = make_pipeline(StandardScaler(), CNNClassifier(input_shape=(1, 8, 8), epochs=5, random_state=0))
    flat = x.reshape(len(x), -1)
    pipe.fit(flat[:80], y[:80])
    assert pipe.score(flat[80:], y[80:]) >= 0.9
    assert set(pipe.predict(flat[80:])) <= {"top", "middle", "left"}
    grid = GridSearchCV(CNNClassifier(epochs=3), {"lr": [1e-3, 1e-2], "batch_size": [16, 32]}, cv=2)
    grid.fit(x, y)
    assert set(grid.best_params_) == {"lr", "batch_size"} and grid.best_score_ >= 0.8
    proba = grid.predict_proba(x[:5])
    assert proba.shape == (5, 3) and np.allclose(proba.sum(1), 1, atol=1e-5)


def test_partial_fit_pickle_and_determinism():
    x, y = _images()
    clf = CNNClassifier(random_state=3)
    with pytest.raises(ValueError, match="classes"):
        clf.partial_fit(x[:40], y[:40])
    for i in range(0, 120, 40):
        clf.partial_fit(x[i:i + 40], y[i:i + 40], classes=["left", "middle", "top"])
    assert clf.n_iter_ == 3
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict_proba(x), clf.predict_proba(x))
    again.partial_fit(x[:40], y[:40])          # optimizer state came along
    clf.partial_fit(x[:40], y[:40])
    np.testing.assert_array_equal(again.predict_proba(x), clf.predict_proba(x))
    a = CNNClassifier(epochs=2, random_state=1).fit(x, y).predict_proba(x)
    b = CNNClassifier(epochs=2, random_state=1).fit(x, y).predict_proba(x)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="10 outputs"):
        CNNClassifier(model="lenet").fit(x, y)
