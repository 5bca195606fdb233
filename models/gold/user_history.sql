-- Each user's history as of the end of each day they were active (catalog/gold/user_history.yaml): the
-- feature store's `user_history` view. A row is known only once its day is over, so its `as_of` is the next
-- midnight (UTC): a point-in-time join never gives a session the history of the day it is still part of.
-- The windows count back from the row's day (the 7 and 28 days ending with it), not from the lookup's day.
WITH daily AS (
  SELECT
    user_id,
    session_date                                  AS day,
    count(*)                                      AS sessions,
    coalesce(sum(page_views), 0)                  AS page_views,
    coalesce(sum(add_to_carts), 0)                AS add_to_carts,
    count_if(converted)                           AS converted_sessions
  FROM {{ ref('gold.sessions') }}
  WHERE user_id IS NOT NULL AND session_date IS NOT NULL
  GROUP BY user_id, session_date
)
SELECT
  user_id,
  day,
  CAST(date_add(day, 1) AS TIMESTAMP)            AS as_of,
  sum(sessions) OVER last_7_days                 AS sessions_7d,
  sum(sessions) OVER last_28_days                AS sessions_28d,
  sum(page_views) OVER last_28_days              AS page_views_28d,
  sum(add_to_carts) OVER last_28_days            AS add_to_carts_28d,
  sum(converted_sessions) OVER last_28_days      AS converted_sessions_28d,
  sum(converted_sessions) OVER last_28_days / sum(sessions) OVER last_28_days
                                                 AS conversion_rate_28d,
  sum(sessions) OVER to_date                     AS sessions_to_date,
  datediff(day, min(day) OVER to_date)           AS days_since_first_session
FROM daily
WINDOW
  last_7_days  AS (PARTITION BY user_id ORDER BY unix_date(day) RANGE BETWEEN 6 PRECEDING AND CURRENT ROW),
  last_28_days AS (PARTITION BY user_id ORDER BY unix_date(day) RANGE BETWEEN 27 PRECEDING AND CURRENT ROW),
  to_date      AS (PARTITION BY user_id ORDER BY day ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
