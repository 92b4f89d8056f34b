import requests
import json
import time

# API服务器地址
API_BASE_URL = "http://localhost:5000"

def trigger_tag_task(tag_ids, user_ids=None):
    """触发标签任务"""
    url = f"{API_BASE_URL}/api/v1/tags/trigger"
    
    payload = {
        "tag_ids": tag_ids,
        "mode": "full"
    }
    
    if user_ids:
        payload["user_ids"] = user_ids
    
    response = requests.post(url, json=payload)
    
    if response.status_code == 202:
        result = response.json()
        print(f"任务提交成功: {result['task_id']}")
        return result['task_id']
    else:
        print(f"任务提交失败: {response.json()}")
        return None

def check_task_status(task_id):
    """检查任务状态"""
    url = f"{API_BASE_URL}/api/v1/tasks/{task_id}/status"
    response = requests.get(url)
    
    if response.status_code == 200:
        result = response.json()
        return result['status']
    else:
        print(f"查询任务状态失败: {response.json()}")
        return None

def wait_for_task_completion(task_id, timeout=300):
    """等待任务完成"""
    start_time = time.time()
    
    while time.time() - start_time < timeout:
        status = check_task_status(task_id)
        if status:
            if status['status'] == 'completed':
                print(f"任务完成: {status['result']}")
                return True
            elif status['status'] == 'failed':
                print(f"任务失败: {status['error']}")
                return False
            else:
                print(f"任务状态: {status['status']}")
                time.sleep(5)
        else:
            time.sleep(5)
    
    print(f"任务执行超时")
    return False

# 使用示例
if __name__ == "__main__":
    # 1. 触发高净值用户和活跃交易者标签任务
    task_id = trigger_tag_task([1, 2])
    
    if task_id:
        # 2. 等待任务完成
        wait_for_task_completion(task_id)
    
    # 3. 指定用户指定标签
    task_id = trigger_tag_task([1, 3], ["user_000001", "user_000002"])
    
    if task_id:
        wait_for_task_completion(task_id)
