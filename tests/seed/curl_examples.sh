# 1. 健康检查
curl -X GET http://localhost:5000/health

# 2. 触发标签任务
curl -X POST http://localhost:5000/api/v1/tags/trigger \
  -H "Content-Type: application/json" \
  -d '{
    "tag_ids": [1, 2, 3],
    "mode": "full"
  }'

# 3. 查询任务状态
curl -X GET http://localhost:5000/api/v1/tasks/550e8400-e29b-41d4-a716-446655440000/status

# 4. 列出所有任务
curl -X GET http://localhost:5000/api/v1/tasks

# 5. 获取可用标签
curl -X GET http://localhost:5000/api/v1/tags/available
