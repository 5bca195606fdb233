-- Each customer's orders as of the end of every day they ordered (catalog/gold/customer_orders.yaml): the
-- feature store's `customer_orders` view. A row is known once its day is over, so its `as_of` is the next
-- midnight (UTC): a point-in-time join never gives an order the history of the day it is part of. Deleted
-- orders (tombstones) do not count; amounts are summed in the orders' own currency.
WITH daily AS (
  SELECT
    customer_id,
    order_date                                    AS day,
    count(*)                                      AS orders,
    count_if(status = 'cancelled')                AS cancelled,
    CAST(sum(total_amount) AS DOUBLE)             AS amount
  FROM {{ ref('silver.retail_orders') }}
  WHERE NOT coalesce(_deleted, false) AND customer_id IS NOT NULL AND order_date IS NOT NULL
  GROUP BY customer_id, order_date
)
SELECT
  customer_id,
  day,
  CAST(date_add(day, 1) AS TIMESTAMP)            AS as_of,
  sum(orders) OVER last_90_days                  AS orders_90d,
  sum(orders) OVER last_365_days                 AS orders_365d,
  sum(cancelled) OVER last_365_days              AS cancelled_orders_365d,
  sum(amount) OVER last_365_days                 AS amount_365d,
  sum(amount) OVER last_365_days / sum(orders) OVER last_365_days
                                                 AS average_order_amount_365d,
  sum(orders) OVER to_date                       AS orders_to_date,
  datediff(day, min(day) OVER to_date)           AS days_since_first_order,
  datediff(day, lag(day) OVER by_day)            AS days_since_previous_order
FROM daily
WINDOW
  last_90_days  AS (PARTITION BY customer_id ORDER BY unix_date(day)
                   RANGE BETWEEN 89 PRECEDING AND CURRENT ROW),
  last_365_days AS (PARTITION BY customer_id ORDER BY unix_date(day)
                   RANGE BETWEEN 364 PRECEDING AND CURRENT ROW),
  to_date       AS (PARTITION BY customer_id ORDER BY day ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW),
  by_day        AS (PARTITION BY customer_id ORDER BY day)
